"""The service: the one visit loop (decode → evaluate → publish) that ``run`` drives over a
night file, and that the long-running consumer will drive over Kafka.
"""
