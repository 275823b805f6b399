"""Where raw visits come from: night files (Avro containers, one block per visit) today; the
Kafka consumer and packet directories join here. A source yields raw alerts grouped by visit and
never decodes more than it must to find a visit's boundary.
"""
