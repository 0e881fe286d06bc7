"""The distributed mode's stream processing: Faust workers that turn the span topic into the Redis view.

``worker`` is the Faust app (exact per partition and bucket aggregates), ``materialize`` writes them to Redis,
``state`` is the table's entry format, ``topics`` creates the topics, ``run`` runs one worker process
(``tokentrace worker``).
"""
