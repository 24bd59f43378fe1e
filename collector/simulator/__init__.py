"""Local exchange simulator for tests, benchmarks and the offline demo: Binance REST + WebSocket, and
the instrument-list endpoints of twelve more exchanges (one port per exchange, ``--exchanges``).

- ``collector.simulator.server``: ``build_app(state)``, ``build_listing_app(venue)``, ``cli_main(argv)``
  (``python -m collector.simulator``)
- ``collector.simulator.state``: ``SimState`` (everything the Binance simulator knows), ``SimConfig``
- ``collector.simulator.listings``: ``VENUES`` (one ``Venue`` per exchange), ``STATUS_MAP`` (normalized
  status -> each exchange's raw status), ``BinanceListings``
- ``collector.simulator.md`` / ``md_server``: market data (books, trades, tickers ...) of Binance, OKX,
  Bybit and Deribit in their real frame shapes, scripted under ``/_sim/md/``
- ``collector.simulator.client``: ``SimulatorClient`` (urllib, sync) and ``start_simulator_process``

Kept import-free on purpose: the client must be usable without importing aiohttp.
"""
