"""The paper's parameter-sharing ablation, reproduced by instantiation (spec section 3.9)."""

from avbert import AVBertConfig
from avbert.parameter_counts import count_transformer_parameters, main, sharing_grid


def test_paper_sharing_progression():
    counts = {
        (c.sharing_across_layers, c.sharing_across_models, c.use_decomposition): c.transformer_parameters
        for c in sharing_grid(AVBertConfig())
    }
    assert counts[(False, False, False)] == 127_581_696  # no sharing: ~127.6M
    assert counts[(True, False, False)] == 21_263_616  # sharing across layers: ~21.3M
    assert counts[(True, True, False)] == 7_087_872  # + across models: ~7.09M
    assert counts[(True, True, True)] == 3_843_840  # + low-rank decomposition (the released model)
    # Unshared transformers hold only their own modality's private factors (the original gives each all three).
    assert counts[(True, False, True)] == 3 * count_transformer_parameters(
        AVBertConfig(use_audio=False, sharing_across_models=False)
    )


def test_cli_prints_the_grid(capsys):
    main([])
    output = capsys.readouterr().out
    assert "| yes | yes | yes | 3,843,840 |" in output and "| no | no | no | 127,581,696 |" in output
