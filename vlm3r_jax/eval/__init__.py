"""VSI-Bench and VSTI-Bench scoring."""
