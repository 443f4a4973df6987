# SPDX-License-Identifier: GPL-2.0-or-later
# bash completion for vfiomigctl(1): commands, options and their values, and the device ids,
# address spaces and job numbers the daemon has (asked with the same --address, if one is on
# the line). Needs nothing from the bash-completion package.

__vfiomigctl_ask() {
        # $1: the listing verb ("list", "space list", "jobs"); $2: the JSON key to print
        local -a cmd=(vfiomigctl --json=short)
        local w
        for w in "${COMP_WORDS[@]}"; do
                [[ $w == --address=* ]] && cmd+=("$w")
        done
        # shellcheck disable=SC2086
        "${cmd[@]}" $1 2>/dev/null | grep -o "\"$2\":[^,}]*" | sed -e "s/^\"$2\"://" -e 's/"//g'
}

_vfiomigctl() {
        local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
        local verbs="list status attach detach set-state set-states reset precopy-info space map unmap
                     attach-space revoke-clients save-state load-state cancel-transfer sim-dma incoming
                     migrate jobs job wait switchover cancel resolve blob"
        local options="--help --version --address= --json= --timeout= --quiet --option --recover=
                       --force-without-p2p --backend= --sim-mapping= --file= --offset= --length= --iova=
                       --access= --data= --output= --run --reassembly-budget= --stall-timeout=
                       --setup-timeout= --to= --token-file= --token= --channels= --no-precopy
                       --bandwidth= --downtime= --switchover= --no-io-uring --no-wait
                       --no-ask-password"
        local states="stop running stop-copy resuming running-p2p pre-copy pre-copy-p2p"
        local -a args=()
        local i w

        COMPREPLY=()
        # An option's value: after "=" in the same word.
        if [[ $cur == --*=* ]]; then
                local opt=${cur%%=*} value=${cur#*=} choices=
                case $opt in
                        --json) choices="short pretty off" ;;
                        --access) choices="rw r w" ;;
                        --backend) choices="iommufd legacy sim" ;;
                        --sim-mapping) choices="by-file by-address" ;;
                        --switchover) choices="auto manual" ;;
                        --recover) choices=$states ;;
                        --file|--output|--token-file)
                                compopt -o filenames 2>/dev/null
                                mapfile -t COMPREPLY < <(compgen -f -- "$value")
                                COMPREPLY=("${COMPREPLY[@]/#/$opt=}")
                                return 0 ;;
                esac
                mapfile -t COMPREPLY < <(compgen -W "$choices" -- "$value")
                COMPREPLY=("${COMPREPLY[@]/#/$opt=}")
                return 0
        fi
        if [[ $cur == -* ]]; then
                mapfile -t COMPREPLY < <(compgen -W "$options" -- "$cur")
                [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *= ]] && compopt -o nospace 2>/dev/null
                return 0
        fi

        # The words before this one that are not options: the command and its arguments so far.
        for ((i = 1; i < COMP_CWORD; i++)); do
                w=${COMP_WORDS[i]}
                [[ $w == -* ]] && continue
                args+=("$w")
        done

        local words=
        if [[ ${#args[@]} -eq 0 ]]; then
                words=$verbs
        else
                case "${args[0]}" in
                        space)
                                case ${#args[@]} in
                                        1) words="create list show destroy" ;;
                                        2) [[ ${args[1]} == show || ${args[1]} == destroy ]] &&
                                                   words=$(__vfiomigctl_ask "space list" id) ;;
                                esac ;;
                        sim-dma|blob)
                                case ${#args[@]} in
                                        1) [[ ${args[0]} == blob ]] && words="set get" || words="write read" ;;
                                        2) words=$(__vfiomigctl_ask list id) ;;
                                        3) [[ ${args[0]} == blob ]] && { compopt -o filenames 2>/dev/null
                                                   mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return 0; } ;;
                                esac ;;
                        status|detach|reset|precopy-info|revoke-clients|cancel-transfer)
                                [[ ${#args[@]} -eq 1 ]] && words=$(__vfiomigctl_ask list id) ;;
                        set-state)
                                case ${#args[@]} in
                                        1) words=$(__vfiomigctl_ask list id) ;;
                                        2) words=$states ;;
                                esac ;;
                        set-states)
                                [[ ${#args[@]} -eq 1 ]] && words=$states || words=$(__vfiomigctl_ask list id) ;;
                        incoming|migrate)
                                words=$(__vfiomigctl_ask list id) ;;
                        save-state|load-state)
                                case ${#args[@]} in
                                        1) words=$(__vfiomigctl_ask list id) ;;
                                        2) compopt -o filenames 2>/dev/null
                                           mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return 0 ;;
                                esac ;;
                        attach-space)
                                case ${#args[@]} in
                                        1) words=$(__vfiomigctl_ask list id) ;;
                                        2) words=$(__vfiomigctl_ask "space list" id) ;;
                                esac ;;
                        map|unmap)
                                [[ ${#args[@]} -eq 1 ]] && words=$(__vfiomigctl_ask "space list" id) ;;
                        job|wait|switchover|cancel)
                                [[ ${#args[@]} -eq 1 ]] && words=$(__vfiomigctl_ask jobs id) ;;
                        resolve)
                                case ${#args[@]} in
                                        1) words=$(__vfiomigctl_ask jobs id) ;;
                                        2) words="committed not-committed" ;;
                                esac ;;
                esac
        fi
        mapfile -t COMPREPLY < <(compgen -W "$words" -- "$cur")
        return 0
}

complete -F _vfiomigctl vfiomigctl
