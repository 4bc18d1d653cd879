"""The verifier reward plugin: math answers (sympy), code tests (sandboxed) and user-written checkers."""
