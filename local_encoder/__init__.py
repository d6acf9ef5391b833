"""Device side of dropstream: windows -> first layer -> activation -> dropping (numpy only).

Nothing in this package imports torch; it is what runs next to the sensor.
"""
