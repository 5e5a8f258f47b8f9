"""Fitting the head: KL region weights, whitening, head initialisation, triplet losses, mining."""
