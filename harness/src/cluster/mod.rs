//! Cluster providers behind one small trait: the simulator, kind and an existing kubeconfig context.
