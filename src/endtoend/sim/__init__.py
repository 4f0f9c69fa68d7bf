"""The driving simulator of the drive recipe: NumPy, seeded, no GUI.

    road.py     tracks from a seed: the centre line, its curvature, how the road looks
    car.py      the kinematic bicycle at constant speed, its limited and noisy steering
    camera.py   the forward camera: every pixel cast onto the ground, painted, as uint8
    expert.py   pure pursuit on the true centre line: the labels and the safety driver
    drive.py    policies driven closed loop in lockstep, the expert's own drives, DAgger's data
"""
