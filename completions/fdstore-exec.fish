# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_fdstore_exec_global_optspecs
    string join \n listen= ready= ready-timeout= listen-file= mode= drain-signal= reload-signal= forward-signal= drain-timeout= max-generations= at-max-generations= h/help V/version
end

function __fish_fdstore_exec_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_fdstore_exec_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_fdstore_exec_using_subcommand
    set -l cmd (__fish_fdstore_exec_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c fdstore-exec -n "__fish_fdstore_exec_needs_command" -l listen -d 'A listener the program needs, as NAME=KIND:ADDRESS[,OPTION]... (for example web=tcp:[::]:8080 or api=unix:/run/app/api.sock,mode=0660). Repeat for several' -r
complete -c fdstore-exec -n "__fish_fdstore_exec_needs_command" -l ready -d 'How to tell that the program is ready: a check, or several joined by + that must all pass (for example notify+accept)' -r
complete -c fdstore-exec -n "__fish_fdstore_exec_needs_command" -l ready-timeout -d 'How long the program may take to become ready' -r
complete -c fdstore-exec -n "__fish_fdstore_exec_needs_command" -l listen-file -d 'A file of listener specs, one NAME=KIND:ADDRESS[,OPTION]... per line (# starts a comment). Read again at every reload: added listeners appear in the new generation, removed ones are closed and removed from the fd store as soon as the new generation is the main process (the old one keeps its copy while it drains). It must be a regular file of at most 1 MiB' -r -F
complete -c fdstore-exec -n "__fish_fdstore_exec_needs_command" -l mode -d 'handover: a reload starts a new generation beside the old one and hands over when it is ready. restart: no overlap; listeners are kept in the fd store across `systemctl restart`, SIGHUP goes to the program' -r -f -a "handover\t''
restart\t''"
complete -c fdstore-exec -n "__fish_fdstore_exec_needs_command" -l drain-signal -d 'The signal that tells the old generation to stop accepting and finish its connections after a hand-over' -r
complete -c fdstore-exec -n "__fish_fdstore_exec_needs_command" -l reload-signal -d 'The signal that starts a reload by hand-over, as `systemctl reload` sends it with Type=notify-reload (set ReloadSignal= to the same signal), or none: only `fdstore-exec reload` reloads, and SIGHUP reaches the program. In --mode restart it is passed to the program' -r
complete -c fdstore-exec -n "__fish_fdstore_exec_needs_command" -l forward-signal -d 'A signal to pass on to the program unchanged, for example SIGWINCH or SIGTTIN. SIGHUP, SIGUSR1 and SIGUSR2 are passed on anyway, unless one is the --reload-signal; SIGTERM, SIGINT and SIGQUIT always are, and stop fdstore-exec with the program. Repeat for several. Send them to fdstore-exec with `systemctl kill --kill-whom=main --signal=SIGNAL`' -r
complete -c fdstore-exec -n "__fish_fdstore_exec_needs_command" -l drain-timeout -d 'How long the old generation may drain before it is killed (SIGKILL)' -r
complete -c fdstore-exec -n "__fish_fdstore_exec_needs_command" -l max-generations -d 'How many generations may be alive at once: the serving one, those still draining after a hand-over, and the one a reload starts (at least 2). Clients that keep idle connections open hold a draining generation until --drain-timeout; this bounds how many pile up when reloads come quickly' -r
complete -c fdstore-exec -n "__fish_fdstore_exec_needs_command" -l at-max-generations -d 'What a reload does when a new generation would exceed --max-generations: kill-oldest ends the oldest draining generations first (their programs are killed, as at --drain-timeout, which the journal says); refuse fails the reload as busy (`fdstore-exec reload` exits 75) and the serving generation keeps serving' -r -f -a "refuse\t''
kill-oldest\t''"
complete -c fdstore-exec -n "__fish_fdstore_exec_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c fdstore-exec -n "__fish_fdstore_exec_needs_command" -s V -l version -d 'Print version'
complete -c fdstore-exec -n "__fish_fdstore_exec_needs_command" -a "reload" -d 'Hand the listeners over to a new generation and wait for the outcome'
complete -c fdstore-exec -n "__fish_fdstore_exec_needs_command" -a "status" -d 'Print the generation, its pid and the last reload\'s outcome'
complete -c fdstore-exec -n "__fish_fdstore_exec_using_subcommand reload" -l pid -d 'The pid of the unit\'s main process [default: $MAINPID, which systemd sets for ExecReload=]' -r
complete -c fdstore-exec -n "__fish_fdstore_exec_using_subcommand reload" -l unit -d 'Ask systemctl for this unit\'s main process' -r
complete -c fdstore-exec -n "__fish_fdstore_exec_using_subcommand reload" -l user -d 'With --unit: the unit is in the user\'s service manager'
complete -c fdstore-exec -n "__fish_fdstore_exec_using_subcommand reload" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c fdstore-exec -n "__fish_fdstore_exec_using_subcommand status" -l pid -d 'The pid of the unit\'s main process [default: $MAINPID, which systemd sets for ExecReload=]' -r
complete -c fdstore-exec -n "__fish_fdstore_exec_using_subcommand status" -l unit -d 'Ask systemctl for this unit\'s main process' -r
complete -c fdstore-exec -n "__fish_fdstore_exec_using_subcommand status" -l user -d 'With --unit: the unit is in the user\'s service manager'
complete -c fdstore-exec -n "__fish_fdstore_exec_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
