# The debootstrap method, as an install script run by the same phases as a user's script
# (setup, prepare, finish and cleanup are the defaults every script inherits).
install() {
    debootstrap --variant="$ARG_VARIANT" --include="$ARG_INCLUDE" "$ARG_SUITE" "$TARGET" "$ARG_MIRROR"
}
