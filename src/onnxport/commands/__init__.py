"""The `onnxport` command's subcommands, one module each, and the terminal they share
(`console`, `render`). Each parses, builds a request, calls the library and renders."""
