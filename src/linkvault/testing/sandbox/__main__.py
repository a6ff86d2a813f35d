"""`python -m linkvault.testing.sandbox`: serve a sandbox, printing its URL once it listens."""

from linkvault.testing.sandbox.run import main

if __name__ == "__main__":
    main()
