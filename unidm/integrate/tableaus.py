"""Butcher tableaus shared by the ODE integrator and the adaptive sampler."""

__all__ = ["DOPRI5_C", "DOPRI5_A", "DOPRI5_E"]

# Dormand & Prince 1980; Hairer, Norsett & Wanner, "Solving ODEs I", Table II.5.2. The last row of A equals b5
# (first same as last: the seventh stage is f at the new point).
DOPRI5_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
DOPRI5_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
# e = b5 - b4, the weights of the local error estimate over the 7 stages
DOPRI5_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)
