"""Solar-system objects: detections associated with a known asteroid or comet.

Rubin associates each detection with the orbits of known solar-system objects; associated
alerts carry an ssSource record (and no diaObject). Keeps those, near the ecliptic
plane where main-belt asteroids live or anywhere for the rest (no latitude cut: NEOs and
TNOs can be far from it). The input of Fink's solar-system stream and of the MPC.
"""


def filter(alerts):
    return notnull(alerts.ssSource.ssObjectId) & (fill(alerts.ssSource.ssObjectId, 0) != 0)
