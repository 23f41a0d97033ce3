# Sourced by the install-*.sh scripts: Debian packages installed as root, or through sudo.
#
#   apt_install WHO WITHOUT_APT [apt-get install options] -- PACKAGE...
#
# WHO names the script in its messages; WITHOUT_APT is what to say when this system has no apt-get.
apt_install() {
    local who="$1" without_apt="$2"
    shift 2
    local options=()
    while [ "$1" != "--" ]; do options+=("$1"); shift; done
    shift
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$who: $without_apt" >&2
        exit 1
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        else
            echo "$who: installing $* needs root; run this script as root" >&2
            exit 1
        fi
    fi
    echo "$who: running apt-get update"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    echo "$who: running apt-get install -y ${options[*]:+${options[*]} }$*"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${options[@]}" "$@"
}
