def labo_linear_cross_entropy(*a, **k): raise NotImplementedError
