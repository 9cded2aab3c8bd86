/*
 * The pod sandbox's process: it holds the pod's namespaces open and does nothing else.
 * Exits 0 on SIGINT or SIGTERM; reaps every child that exits (it is PID 1 when the pod
 * shares one PID namespace, so orphans are re-parented to it). Built statically by
 * e2e/harness/src/images.rs: `cc -static -O2`.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "-v") == 0) {
        puts("pixel-playground pause");
        return 0;
    }
    /* Blocked signals stay pending (even for PID 1, which ignores default-handled ones)
     * until sigwait takes them: no handler and no race between checking and sleeping. */
    sigset_t wanted;
    sigemptyset(&wanted);
    sigaddset(&wanted, SIGINT);
    sigaddset(&wanted, SIGTERM);
    sigaddset(&wanted, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &wanted, NULL) != 0) {
        perror("pause: sigprocmask");
        return 1;
    }
    for (;;) {
        int sig = 0;
        if (sigwait(&wanted, &sig) != 0) {
            perror("pause: sigwait");
            return 1;
        }
        if (sig != SIGCHLD) {
            return 0;
        }
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
    }
}
