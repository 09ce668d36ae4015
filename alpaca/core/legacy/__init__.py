"""The legacy wire protocol of the C alpaca-tunnel 6.1.2, for talking to deployed C nodes.

Insecure by design (docs/legacy.md): the payload is not authenticated, keys have 64 bits of
entropy, and the anti-replay check is keyed on the sender's clock. It is used only for the
peers configured with ``protocol``/``peer_protocols`` = ``"legacy-6.1.2"``.

Modules: ``header`` (the 16-byte header), ``codec`` (keys, AES-ECB header and ICV, AES-CBC
body, padding), ``replay`` (time/seq bitmaps), ``inner`` (si/di address rewriting),
``engine`` (LegacyEngine: the forwarding rules of 6.1.2). Nothing here is imported by the
default protocol's modules; :mod:`alpaca.core.mux` joins the two.
"""
