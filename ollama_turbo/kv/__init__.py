"""The KV planner and Modelfiles: model geometry, cache memory per type, context sizes per host."""
