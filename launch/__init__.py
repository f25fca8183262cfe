"""speedrun.launch: recipe -> sglang.launch_server, with health wait, logs and teardown."""
