"""`neocloud`: the command-line client tenant CI pipelines use.

It is client-side code: it talks to the server over the REST API only, and imports no
Django. From the server's package it uses only the pure-Python modules `workflows.signing`,
`workflows.certs`, `workflows.archive` and `workflows.spec`.
"""
