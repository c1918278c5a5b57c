"""kiqstack's JetStream transport, by concern.

* :mod:`.connection`: the NATS connection (bounded or stoppable first connect, reconnects);
* :mod:`.topology`: the streams and consumers, made sure of at startup and repaired when lost;
* :mod:`.consumer`: kiqstack's own pull requests and the deliveries they bring;
* :mod:`.inflight`: the deliveries a worker holds, kept alive while they run;
* :mod:`.transport`: :class:`~app.jetstream.transport.JetStreamTransport`, which puts them
  together for :class:`app.broker.KiqBroker`.
"""
