"""The functional core: pure protocol and forwarding logic.

Nothing in this package reads a clock, draws random numbers itself, opens a socket or a file,
or imports gevent, pyroute2 or prometheus_client (tests/core/test_purity.py enforces it).
Time comes in as ``now`` (monotonic float seconds); random bytes come from an injected callable.
"""
