#!/bin/sh
# memhog: holds the `mb` input (default 256) megabytes in one shell variable, to exceed the
# memory limit of its run and be OOM-killed.
mb="$(sed -n 's/.*"mb"[ ]*:[ ]*\([0-9][0-9]*\).*/\1/p' "$GYOZA_INPUT_PATH")"
echo "memhog: allocating ${mb:-256} MB"
hog="$(head -c "$((${mb:-256} * 1024 * 1024))" /dev/zero | tr '\0' x)"
echo "memhog: survived holding ${#hog} bytes"
echo '{"survived":true}' >"$GYOZA_OUTPUT_PATH"
