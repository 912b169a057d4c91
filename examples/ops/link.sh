#!/bin/sh
# link: a hostile op, for the tests: instead of writing its outputs it replaces the outputs
# file with a symbolic link to the path in the `target` input (a file on the worker's host,
# outside the run directory). The worker must not follow it.
target="$(sed -n 's/.*"target"[ ]*:[ ]*"\([^"]*\)".*/\1/p' "$GYOZA_INPUT_PATH")"
ln -sf "$target" "$GYOZA_OUTPUT_PATH"
echo "link: outputs.json -> $target"
