"""How fast a step runs here: precision (autocast, fp16 scaling, the CPU probe), step timing, the time budget."""
