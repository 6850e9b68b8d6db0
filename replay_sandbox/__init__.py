"""ptrace replay of recorded processes under a virtual clock."""
