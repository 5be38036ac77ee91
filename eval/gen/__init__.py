"""Metrics for the image-generation head on the Shapes world.

    from eval.gen.checker import calibrate, check_image, score_images   # rule-based: colour, kind, position, count
    from eval.gen.fd import evaluate_generation, fd_scores, frechet_distance, tower_features

``checker`` reads each generated picture back with fixed rules (no model); ``fd`` measures the Frechet
distance between generated and real pictures in the feature space of the project's own vision tower.
``evaluate_generation(model, "data/shapes/gen_test.json", images)`` gives both as one dict (the demo's
generation_metrics.json).
"""
