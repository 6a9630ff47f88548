"""One module per ``openrag`` subcommand: argument parsing and printing only; the work lives in the library."""
