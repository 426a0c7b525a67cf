"""The human-preference web app: people judge "which response is better?" (`alignkit annotate`).

db.py (tables, migrations, private SQLite files), accounts.py (users, passwords, tokens, disabling),
sessions.py (signed, revocable cookies and the server secret), imports.py (what an imported row may hold),
service.py (what the app does), agreement.py (inter-annotator statistics), server.py (FastAPI routes and
the pages in static/), cli.py (the commands). FastAPI and SQLAlchemy are imported only here.
"""
