"""One module per op: public function, validation, dispatch to cuda | cpu | triton | torch."""
