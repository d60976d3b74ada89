"""A stand-in for Luma's web API ("photon v1"), the upstream of the dev stack and of every test.

It speaks the web API as public clients observed it (paths, status codes, bare arrays, FastAPI errors,
cookie auth with Set-Cookie rotation, presigned uploads, a CDN for media), so pointing the worker at
the real Luma is a change of settings only. Behaviour is driven by knobs and scripted faults, never
by prompts.

    config.py   SimulatorConfig (knobs, mutable at run time), AccountSpec, default_accounts()
    state.py    SimulatorState: accounts, generations, uploads, faults queue, request log, stats
    app.py      create_app(state), run(host, port, config)
    testing.py  RunningSimulator: start/stop in a test's event loop, same port and state
    control.py  /_sim/... endpoints to steer and observe it
"""
