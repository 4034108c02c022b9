"""Monitoring over time (issue 23): every clip of every machine scored once, kept in a
database, and alerts raised from the last few verdicts.

- :mod:`.tables`: the SQLAlchemy 2 tables (machines, clips, scores, alerts, alert events);
- :mod:`.migrations`: their Alembic migrations (``asd db upgrade``), one per schema change;
- :mod:`.store`: the only module that speaks SQL;
- :mod:`.alerts`: the alert rule (k of the last n verdicts anomalous raises, m normal in a
  row clears) as pure functions over verdicts;
- :mod:`.notify`: apprise notifications, once per alert state change;
- :mod:`.clips`: where a clip comes from (machine id, recorded-at time) and the clip store;
- :mod:`.watch`: ``asd monitor``: find, score and store clips, once or watching folders;
- :mod:`.cli`: the ``asd monitor``, ``asd db``, ``asd history`` and ``asd alerts`` commands.
"""
