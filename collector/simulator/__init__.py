"""Local exchange simulator (Binance REST + WebSocket) for tests, benchmarks and the offline demo.

- ``collector.simulator.server``: ``build_app(state)``, ``cli_main(argv)`` (``python -m collector.simulator``)
- ``collector.simulator.state``: ``SimState`` (everything the simulator knows), ``SimConfig``
- ``collector.simulator.client``: ``SimulatorClient`` (urllib, sync) and ``start_simulator_process``

Kept import-free on purpose: the client must be usable without importing aiohttp.
"""
