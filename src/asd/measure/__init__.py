"""The measuring commands: what the product is judged by, kept apart from the product path.

- :mod:`asd.measure.benchmark`: ``asd benchmark``, detectors compared on labelled clips;
- :mod:`asd.measure.robustness`: ``asd robustness``, verdicts through the recording chain;
- :mod:`asd.measure.speed`: ``asd bench``, speed and memory against their targets;
- :mod:`asd.measure.loadtest`: ``asd loadtest``, many clients against a server.
"""
