"""The peers ``make bench`` compares kiqstack with, each wired as its own documentation shows.

Every module reads only server URLs, a queue name (so that runs do not share state) and, where a
configuration is tuned, that one knob from the environment; everything else is the library's
default. :mod:`bench.configs` says which knob each configuration sets.
"""
