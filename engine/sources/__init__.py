"""Where raw visits come from: night files (Avro containers, one block per visit) and a Kafka
consumer group cut into visit batches (:mod:`.kafka`); packet directories join here. A source yields raw alerts grouped by visit and
never decodes more than it must to find a visit's boundary.
"""
