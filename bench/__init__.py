"""keyrail's benchmark: keyrail side by side with a raw forwarder, nginx and LiteLLM.

Modules: upstream (the fake OpenAI server), floor (the raw forwarder), loadgen (the clients),
procstat (CPU and memory from /proc), targets (the processes), peers (nginx and LiteLLM
configs, and the check that LiteLLM stays on the machine), runner (scenarios, interleaving),
stats (percentiles), report (tables, plots). `python -m bench --help` runs it.
"""
