"""Human feedback in the loop: `align label` (rank K responses) and `align arena` (blind A/B votes)."""
