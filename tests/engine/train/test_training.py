"""Training really trains: a few steps lower the denoiser's held-out MSE and raise accuracy under noise."""

import pytest
import torch
import torch.nn.functional as F

from engine.data import load_dataset
from engine.denoise import DRUNet
from engine.denoise.train import (
    DenoiserTraining,
    denoiser_metrics,
    mse_loss,
    noisy_with_levels,
    train_denoiser,
)
from engine.models import create_model
from engine.noise import Gaussian, GeneralizedGaussian
from engine.train.classifier import ClassifierTraining, noisy_accuracy, train_classifier
from engine.train.objectives import consistency_loss, noisy_copies, smoothmix_points


@pytest.fixture(scope="module")
def digits():
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    return (train.x, train.y), (test.x, test.y)


def test_a_denoiser_trained_for_a_few_steps_lowers_held_out_mse(digits):
    train, test = digits
    torch.manual_seed(0)
    denoiser = DRUNet(1, (8, 16, 32, 32), 1)
    before = denoiser_metrics(denoiser.eval(), *test, Gaussian(0.5), [0.25, 0.5])
    history = train_denoiser(denoiser, train, Gaussian(0.5), [0.25, 0.5], DenoiserTraining(epochs=8, batch_size=64))
    after = denoiser_metrics(denoiser.eval(), *test, Gaussian(0.5), [0.25, 0.5])
    assert history[-1].loss < history[0].loss
    for sigma in ("0.25", "0.5"):
        assert after[f"mse@{sigma}"] < 0.5 * before[f"mse@{sigma}"]
        assert after[f"mse@{sigma}"] < after[f"noisy_mse@{sigma}"]  # better than not denoising at all


def test_stability_fine_tuning_raises_the_frozen_classifiers_accuracy_on_denoised_images(digits):
    train, test = digits
    torch.manual_seed(0)
    classifier = create_model("digits_cnn")
    train_classifier(classifier, train, None, ClassifierTraining(method="none", epochs=10, batch_size=64),
                     num_classes=10)
    frozen = {k: v.clone() for k, v in classifier.state_dict().items()}
    denoiser = DRUNet(1, (8, 16, 32, 32), 1)
    config = DenoiserTraining(objective="mse+stability", epochs=4, stability_epochs=6, batch_size=64)
    history = train_denoiser(denoiser, train, Gaussian(0.5), [0.5], config, classifier=classifier, test=test)
    accuracy = [log.metrics["denoised_accuracy@0.5"] for log in history]
    assert accuracy[-1] > accuracy[3]  # stability epochs (5-10) improve on the MSE-only denoiser
    assert all(torch.equal(v, classifier.state_dict()[k]) for k, v in frozen.items())  # f stayed frozen


def test_stability_needs_a_classifier(digits):
    with pytest.raises(ValueError, match="frozen classifier"):
        train_denoiser(DRUNet(1, (8, 8, 8, 8), 1), digits[0], Gaussian(0.5), [0.5],
                       DenoiserTraining(objective="stability", epochs=1))


@pytest.mark.parametrize("method", ["gaussian", "consistency", "smoothmix"])
def test_noise_training_for_a_few_steps_raises_accuracy_under_noise(digits, method):
    train, test = digits
    torch.manual_seed(0)
    model = create_model("digits_cnn")
    noise = Gaussian(0.5)
    before = noisy_accuracy(model.eval(), *test, noise)
    config = ClassifierTraining(method=method, epochs=3, batch_size=64, smoothmix_steps=2, max_steps_per_epoch=12)
    history = train_classifier(model, train, noise, config, num_classes=10, test=test)
    after = noisy_accuracy(model.eval(), *test, noise)
    assert before < 0.3 and after > before + 0.25
    assert history[-1].metrics["noisy_accuracy"] == pytest.approx(after)
    assert set(history[-1].metrics) == {"clean_accuracy", "noisy_accuracy"}


def test_generalized_gaussian_training_draws_from_the_dsrs_law(digits):
    train, test = digits
    torch.manual_seed(0)
    model = create_model("digits_cnn")
    noise = GeneralizedGaussian(d=64, k=15, sigma=0.5)
    config = ClassifierTraining(method="gaussian", epochs=3, batch_size=64, max_steps_per_epoch=12)
    train_classifier(model, train, noise, config, num_classes=10)
    assert noisy_accuracy(model.eval(), *test, noise) > 0.4
    copies = noisy_copies(torch.zeros(4000, 1, 8, 8), noise, 1)
    assert copies.flatten(1).norm(dim=1).square().mean() == pytest.approx(64 * 0.25, rel=0.03)  # E||e||^2 = d sigma^2


def test_consistency_regulariser_vanishes_when_every_copy_agrees():
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    logits = torch.randn(1, 10)
    constant = lambda batch: logits.expand(len(batch), 10)
    loss = consistency_loss(constant, x, y, Gaussian(0.5), m=3, lbd=5.0, eta=0.0)
    assert loss == pytest.approx(float(F.cross_entropy(logits.expand(5, 10), y)), abs=1e-5)


def test_smoothmix_adversary_moves_away_from_the_label_and_stays_in_the_image_box(digits):
    train, _ = digits
    torch.manual_seed(0)
    model = create_model("digits_cnn")
    train_classifier(model, train, Gaussian(0.25), ClassifierTraining(epochs=3, batch_size=64), num_classes=10)
    model.eval()
    x, y = train[0][:32], train[1][:32]
    noises = Gaussian(0.25).sample(4 * 32, x.shape[1:]).view(4, *x.shape)
    start, adv = smoothmix_points(model, x, y, noises, steps=4, step_size=0.5)
    one_step, _ = smoothmix_points(model, x, y, noises, steps=4, step_size=0.5, mix_step=1)
    assert torch.equal(start, x)
    assert 0.0 <= float(adv.min()) and float(adv.max()) <= 1.0
    assert float((one_step - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5
    with torch.no_grad():
        def nll(points):
            return F.nll_loss(torch.softmax(model((points.unsqueeze(0) + noises).flatten(0, 1)), 1)
                              .view(4, 32, -1).mean(0).log(), y)
        assert nll(adv) > nll(x)


def test_each_image_gets_one_of_the_levels():
    x = torch.zeros(2000, 1, 8, 8)
    noisy, sigma = noisy_with_levels(x, Gaussian(1.0), [0.25, 0.5])
    assert set(sigma.tolist()) == {0.25, 0.5}
    rms = noisy.flatten(1).square().mean(1).sqrt()
    assert torch.allclose(rms[sigma == 0.25].mean(), torch.tensor(0.25), rtol=0.05)
    assert torch.allclose(rms[sigma == 0.5].mean(), torch.tensor(0.5), rtol=0.05)
    assert mse_loss(lambda noisy, s: noisy, x, Gaussian(1.0), [0.5]) == pytest.approx(0.25, rel=0.05)
