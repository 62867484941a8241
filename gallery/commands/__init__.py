"""One module per `gallery` subcommand; see docs/dev-contract.md."""
