/*
 * A parent and a forked child with known exit codes, both alive until told to finish,
 * so a test can read them from /proc first.
 *
 * Usage: fork_exit PARENT_CODE CHILD_CODE [ARGS...] (ARGS only mark the command line)
 * Protocol: prints "ready <pid> <child_pid>" once the child exists, waits for a line on
 * stdin; then the child exits CHILD_CODE, the parent reaps it and exits PARENT_CODE.
 * Killed before that, the parent's death closes the pipe and the child exits too.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int parent_code = argc > 1 ? atoi(argv[1]) : 0;
	int child_code = argc > 2 ? atoi(argv[2]) : 0;
	int release[2];
	char line[64], byte;
	pid_t child;
	int status;

	if (pipe(release))
		return 100;
	child = fork();
	if (child < 0)
		return 101;
	if (child == 0) {
		close(release[1]);
		/* returns 1 on "go", 0 when the parent died: exit either way */
		(void)!read(release[0], &byte, 1);
		_exit(child_code);
	}
	close(release[0]);
	printf("ready %d %d\n", getpid(), child);
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 102;
	(void)!write(release[1], "g", 1);
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) ||
	    WEXITSTATUS(status) != child_code)
		return 103;
	return parent_code;
}
