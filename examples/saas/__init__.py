"""A SaaS backend with unimw inside: organisations on plans, API keys it issues, spend by feature.

The app keeps its customers in its own SQLite database (:mod:`examples.saas.db`);
the policy (``policies.yaml`` here) keeps only the plans. unimw asks the app
who a key belongs to (:mod:`examples.saas.keys`), and the app's own endpoints
call the gateway in process for the organisation of the logged-in user
(:mod:`examples.saas.app`). Run it with ``bash examples/run_saas.sh``.
"""
