"""What the router and the expert share, so that neither service imports the other.

Both services speak the same request messages, so they apply one rule set (`rules`), parse bodies
the same tolerant way (`parsing`), raise errors from one base that carries its gRPC status and map
them with one table (`errors`), load TLS files with the same checks (`tls`), write request log
lines in one format (`logs`) and make OpenTelemetry spans the same way (`tracing`). This package
imports neither service; a test holds it to that.
"""
