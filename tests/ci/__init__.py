"""Offline checks of skaffold.yaml, the kind config, the GitHub workflows and the dev/e2e values."""
