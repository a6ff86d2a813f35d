"""Application services: what the API, the CLI and library users all call.

Plain arguments in, domain objects out; they own the rules.
"""
