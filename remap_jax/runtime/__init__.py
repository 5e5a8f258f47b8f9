"""Process plumbing: devices and hosts, XLA options, host memory, atomic files, optional extras."""
