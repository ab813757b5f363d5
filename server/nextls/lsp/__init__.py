"""The nextls language server (pygls 2): `nextls serve`.

`server` creates the pygls server and registers the features, one module each: `diagnostics`,
`code_actions`, `hover`, `inlay_hints`, `commands`; `config` maps the client's settings, `state` holds
the per-document caches and `jobs` runs the long work (tests, traces, the model) off the event loop.
"""
