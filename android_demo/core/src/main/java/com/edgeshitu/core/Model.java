package com.edgeshitu.core;

/** A loaded artifact: float32 tensors in, float32 tensors out (batch 1). */
public interface Model {
    int[][] inputShapes();

    int[][] outputShapes();

    float[][] run(float[][] inputs);

    void close();
}
