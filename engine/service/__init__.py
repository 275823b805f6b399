"""The service: the one visit step (decode → evaluate → publish) that ``run`` drives over a
night file and ``serve`` over a Kafka consumer group (commit after publish, dead letters,
visit index, metrics); ``produce`` and ``replay`` around it.
"""
