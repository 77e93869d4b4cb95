// stepcover: run a command under ptrace, single-stepping every thread and child it makes, and
// print the addresses of the instructions it executed inside its own executable's code, one
// link-time address (hex) per line, sorted. Exits with the command's status (128 + signal).
//
// Used by scripts/order-start-symbols.sh to find the functions a `virtkit run` touches, so the
// release build can lay them out together (lld's --symbol-ordering-file). Sampling misses short
// functions; single-stepping misses none of the code the run took, and each function it misses
// would cost a whole fault-around window of resident text.
//
//   cc -O2 -o stepcover bench/stepcover.c
//   stepcover [-o FILE] -- CMD ARGS...
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t text_start, text_end, load_base;
static uint8_t *seen; // one bit per byte of the executable's code

static void die(const char *what) {
    fprintf(stderr, "stepcover: %s: %s\n", what, strerror(errno));
    exit(2);
}

// The executable's code mapping and its load base, from the stopped child's maps.
static void find_text(pid_t pid) {
    char path[64], exe[4096], line[8192];
    snprintf(path, sizeof path, "/proc/%d/exe", pid);
    ssize_t n = readlink(path, exe, sizeof exe - 1);
    if (n < 0) die("readlink exe");
    exe[n] = 0;
    snprintf(path, sizeof path, "/proc/%d/maps", pid);
    FILE *f = fopen(path, "r");
    if (!f) die("open maps");
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b, off;
        char perms[8];
        int name_at = 0;
        if (sscanf(line, "%lx-%lx %7s %lx %*s %*s %n", &a, &b, perms, &off, &name_at) < 4) continue;
        char *name = line + name_at;
        name[strcspn(name, "\n")] = 0;
        if (strcmp(name, exe) != 0) continue;
        if (off == 0 && !load_base) load_base = a;
        if (perms[2] == 'x') {
            text_start = a;
            text_end = b;
        }
    }
    fclose(f);
    if (!text_start) {
        fprintf(stderr, "stepcover: no code mapping of %s\n", exe);
        exit(2);
    }
    seen = calloc((text_end - text_start + 7) / 8, 1);
    if (!seen) die("calloc");
}

int main(int argc, char **argv) {
    const char *out_path = NULL;
    int i = 1;
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) out_path = argv[++i];
    }
    if (i + 1 >= argc) {
        fprintf(stderr, "usage: stepcover [-o FILE] -- CMD ARGS...\n");
        return 2;
    }
    char **cmd = argv + i + 1;
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        if (ptrace(PTRACE_TRACEME, 0, 0, 0) < 0) die("PTRACE_TRACEME");
        execvp(cmd[0], cmd);
        die("execvp");
    }
    int status;
    if (waitpid(child, &status, 0) < 0 || !WIFSTOPPED(status)) die("wait for exec");
    find_text(child);
    long opts = PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_EXITKILL;
    if (ptrace(PTRACE_SETOPTIONS, child, 0, opts) < 0) die("PTRACE_SETOPTIONS");
    if (ptrace(PTRACE_SINGLESTEP, child, 0, 0) < 0) die("PTRACE_SINGLESTEP");
    unsigned long steps = 0;
    int exit_code = 0;
    for (;;) {
        pid_t pid = waitpid(-1, &status, __WALL);
        if (pid < 0) {
            if (errno == ECHILD) break;
            if (errno == EINTR) continue;
            die("waitpid");
        }
        if (WIFEXITED(status) || WIFSIGNALED(status)) {
            if (pid == child) exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            continue;
        }
        if (!WIFSTOPPED(status)) continue;
        int sig = WSTOPSIG(status);
        int event = status >> 16;
        int deliver = 0;
        if (sig == SIGTRAP || event) {
            // A step, or a clone/fork event: record where the thread is.
        } else if (sig == SIGSTOP) {
            // A new thread or child starts stopped; do not pass its SIGSTOP on.
        } else {
            deliver = sig;
        }
        errno = 0;
        long rip = ptrace(PTRACE_PEEKUSER, pid, offsetof(struct user_regs_struct, rip), 0);
        if (errno == 0 && (uint64_t)rip >= text_start && (uint64_t)rip < text_end) {
            uint64_t at = (uint64_t)rip - text_start;
            seen[at / 8] |= 1u << (at % 8);
        }
        steps++;
        if (ptrace(PTRACE_SINGLESTEP, pid, 0, deliver) < 0 && errno != ESRCH) die("PTRACE_SINGLESTEP");
    }
    FILE *out = out_path ? fopen(out_path, "w") : stdout;
    if (!out) die("open output");
    unsigned long distinct = 0;
    for (uint64_t at = 0; at < text_end - text_start; at++) {
        if (seen[at / 8] >> (at % 8) & 1) {
            fprintf(out, "%lx\n", (unsigned long)(text_start + at - load_base));
            distinct++;
        }
    }
    if (out != stdout) fclose(out);
    fprintf(stderr, "stepcover: %lu steps, %lu distinct instructions in the executable's code, exit %d\n",
            steps, distinct, exit_code);
    return exit_code;
}
